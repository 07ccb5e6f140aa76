"""Shared critic fixtures: a tiny trained policy, and feedback records made from sandbox copilot reviews.

Torch runs on one thread (see tests/policy/conftest.py for why)."""

from __future__ import annotations

import math
import random
import uuid
from pathlib import Path

import pytest
import torch

from policy.policy import LMPolicy
from sandbox.copilot import CopilotStep, bayes_policy, run_copilot
from sandbox.generate import iter_traces
from sandbox.simulate import StepModel
from schemas import Action, FeedbackRecord, Proposal, ProposalFeatures, UIState, Verdict
from schemas.feedback import FeedbackSource
from schemas.risk import SliceKey
from schemas.trace import Trace
from tests.policy.test_policy import QUICK, TINY

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def critic_traces() -> list[Trace]:
    return iter_traces(40, 5)


@pytest.fixture(scope="session")
def tiny_policy(critic_traces: list[Trace], tmp_path_factory: pytest.TempPathFactory) -> tuple[LMPolicy, Path]:
    """A tiny LM policy fitted on 30 sandbox cases, and the directory it was saved to."""
    policy = LMPolicy(model=TINY, training=QUICK, vocab_size=600, progress=False).fit(critic_traces[:30])
    path = policy.save(tmp_path_factory.mktemp("tiny_policy") / "policy")
    return policy, path


def sloppy_policy(state: UIState, model: StepModel) -> Action:
    """The best possible policy, except that on about a quarter of the steps it proposes the least likely action
    some operator might take (often a slip), so the feedback holds real model errors as well as the operators'
    random rejections."""
    if random.Random(state.etag).random() < 0.25 and len(model.predictive) > 1:
        return min(model.predictive.values(), key=lambda ap: ap[1])[0]
    return bayes_policy(state, model)


def record_from_review(step: CopilotStep, p: float, rng: random.Random) -> FeedbackRecord:
    """A FeedbackRecord for a sandbox copilot review, with policy-confidence features made up from ``p``."""
    state = step.state
    features = ProposalFeatures(
        logprob=math.log(p), margin=max(0.0, 2 * p - 1), entropy=-p * math.log(p), rank=0, probability=p
    )
    proposal = Proposal(
        proposal_id=uuid.UUID(int=rng.getrandbits(128)).hex,
        session_id=state.session_id,
        case_id=state.case_id,
        process_id=state.process_id,
        step=state.step,
        state_etag=state.etag,
        action=step.proposed,
        features=features,
    )
    accepted = step.verdict == Verdict.ACCEPT
    return FeedbackRecord(
        record_id=uuid.UUID(int=rng.getrandbits(128)).hex,
        source=FeedbackSource.COPILOT,
        state=state,
        proposal=proposal,
        accepted=accepted,
        reason=step.reason,
        operator_action=None if accepted else step.executed,
        operator_id=step.operator_id,
        slice=SliceKey(process_id=state.process_id, action_type=step.proposed.type),
    )


def synthetic_feedback(sessions: int = 30, seed: int = 11) -> list[FeedbackRecord]:
    """Feedback rows from real sandbox copilot reviews of a sloppy policy, with policy-confidence features made up
    to be informative but noisy (so critic tests do not need a trained LM)."""
    rng = random.Random(seed)
    records: list[FeedbackRecord] = []
    for step in run_copilot(sessions, seed, policy=sloppy_policy):
        p = min(0.999, max(0.001, rng.gauss(0.85 if step.acceptable else 0.35, 0.15)))
        records.append(record_from_review(step, p, rng))
    return records


@pytest.fixture(scope="session")
def feedback_records() -> list[FeedbackRecord]:
    return synthetic_feedback()
