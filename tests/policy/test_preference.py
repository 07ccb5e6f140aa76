"""The preference update on a tiny model: the operator's action gains on the proposal it replaced, the traces
keep the rest in place, and only model-error corrections count."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from importers.jsonl import read_traces
from policy.model import ModelConfig
from policy.policy import LMPolicy
from policy.preference import (
    PreferenceConfig,
    PreferencePair,
    _anchor_batch,
    gated_preference_update,
    is_value_pair,
    preference_margin,
    preference_pairs,
    preference_update,
)
from policy.train import Example, TrainConfig
from sandbox.generate import generate
from sandbox.scenario import scenario_by_name
from schemas.actions import Action, CloseChat, SelectOption, SendTextToChat, action_key
from schemas.decision import RejectReason
from schemas.feedback import FeedbackRecord, FeedbackSource
from schemas.risk import SliceKey
from schemas.trace import Trace

TINY = ModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
QUICK = TrainConfig(epochs=2, batch_size=16, eval_every=20, warmup_steps=5, threads=1)


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> list[Trace]:
    path: Path = tmp_path_factory.mktemp("pref") / "t.jsonl"
    generate(30, 9, path, scenario_by_name("default"), progress=False)
    return list(read_traces(path))


def _pairs(policy: LMPolicy, traces: list[Trace]) -> list[PreferencePair]:
    """Corrections an operator would make: wherever the proposal is not the gold action, the gold action is
    preferred over it."""
    steps = [step for trace in traces for step in trace.steps]
    proposals = policy.propose_batch([s.state for s in steps], k=1)
    return [
        PreferencePair(step.state, step.action, proposal.action)
        for step, proposal in zip(steps, proposals, strict=True)
        if proposal is not None and action_key(proposal.action) != action_key(step.action)
    ]


def test_the_preferred_actions_margin_rises_and_the_traces_hold(traces: list[Trace]) -> None:
    train, corrections = traces[:20], traces[20:]
    policy = LMPolicy(model=TINY, training=QUICK, vocab_size=600, progress=False).fit(train)
    pairs = _pairs(policy, corrections)
    assert len(pairs) >= 10
    version = policy.version_
    margin_before = preference_margin(policy, pairs)
    history = preference_update(policy, pairs, train, PreferenceConfig(epochs=6, learning_rate=1e-3, threads=1))
    assert history.margin_before == pytest.approx(margin_before, abs=1e-3)
    assert history.margin_after > margin_before + 1.0
    assert policy.version_ != version
    # some corrected states now propose the operator's action (none did before: that is what made them pairs);
    # DPO only orders the two actions of a pair, so a third candidate may still come first elsewhere
    fixed = sum(
        p is not None and action_key(p.action) == action_key(pair.chosen)
        for pair, p in zip(pairs, policy.propose_batch([pair.state for pair in pairs], k=1), strict=True)
    )
    assert fixed >= len(pairs) // 10
    assert history.losses[-1]["traces"] < 3 * history.losses[0]["traces"] + 0.5


def test_only_model_error_corrections_are_pairs(traces: list[Trace]) -> None:
    policy = LMPolicy(model=TINY, training=TrainConfig(epochs=1, batch_size=16, threads=1), vocab_size=600,
                      progress=False).fit(traces[:10])  # fmt: skip
    step = traces[12].steps[1]
    proposal = policy.propose(step.state)
    assert proposal is not None
    other = next(s.action for s in traces[12].steps if action_key(s.action) != action_key(proposal.action))

    def record(accepted: bool, reason: RejectReason | None, operator: object) -> FeedbackRecord:
        return FeedbackRecord(
            record_id=f"r{accepted}{reason}{operator is None}",
            source=FeedbackSource.COPILOT,
            state=step.state,
            proposal=proposal,
            accepted=accepted,
            reason=reason,
            operator_action=operator,
            operator_id="op",
            slice=SliceKey(process_id=step.state.process_id, action_type=proposal.action.type),
        )

    records = [
        record(True, None, None),
        record(False, RejectReason.ACCEPTABLE_ALTERNATIVE, other),
        record(False, RejectReason.MODEL_ERROR, None),
        record(False, RejectReason.MODEL_ERROR, proposal.action),
        record(False, RejectReason.MODEL_ERROR, other),
    ]
    pairs = preference_pairs(records)
    assert [(p.chosen, p.rejected) for p in pairs] == [(other, proposal.action)]


def test_the_gate_keeps_an_update_that_wins_held_out_pairs_and_undoes_one_that_hurts(traces: list[Trace]) -> None:
    train, corrections = traces[:20], traces[20:]
    policy = LMPolicy(model=TINY, training=QUICK, vocab_size=600, progress=False).fit(train)
    pairs = _pairs(policy, corrections)
    config = PreferenceConfig(epochs=4, learning_rate=1e-3, threads=1)
    assert policy.model_ is not None
    weights = {k: v.clone() for k, v in policy.model_.state_dict().items()}
    version = policy.version_
    # any drop at all undoes it (max_drop below zero): weights, bank and version come back exactly
    undone = gated_preference_update(policy, pairs, train, corrections, config, max_drop=-1.0, min_steps=1)
    assert not undone.accepted and undone.reason.startswith("undone")
    assert policy.version_ == version
    assert all(torch.equal(v, weights[k]) for k, v in policy.model_.state_dict().items())
    # held-out pairs that repeat trained ones are won more often after the update: kept
    repeated = pairs + pairs[: len(pairs) // 3]
    kept = gated_preference_update(
        policy, repeated, train, corrections, config, holdout=(len(pairs) // 3) / len(repeated), max_drop=1.0
    )
    assert kept.accepted, kept.reason
    assert kept.pairs_won_after > kept.pairs_won_before and policy.version_ != version


def test_the_matched_anchor_draws_its_share_from_the_pairs_screens() -> None:
    examples = [Example(ids=[i], prompt_len=0) for i in range(100)]
    pair_screens = [[3, 4], [], [5]]  # the trace examples on each pair's screen (the second pair's has none)
    cfg = PreferenceConfig(trace_batch_size=8, matched_anchor=0.5)
    batch = _anchor_batch(examples, pair_screens, cfg, random.Random(0))
    assert len(batch) == 8
    assert all(e.ids[0] in {3, 4, 5} for e in batch[:4])  # half from the pairs' screens
    # no screen with trace examples: the whole batch comes from all the traces, as with matched_anchor 0
    unmatched = _anchor_batch(examples, [[], []], cfg, random.Random(0))
    assert [e.ids for e in unmatched] == [
        e.ids
        for e in _anchor_batch(examples, [], PreferenceConfig(trace_batch_size=8, matched_anchor=0.0), random.Random(0))
    ]
    with pytest.raises(ValueError, match="matched_anchor"):
        PreferenceConfig(matched_anchor=1.5)


def test_value_pairs_differ_only_in_the_value(traces: list[Trace]) -> None:
    state = traces[0].steps[0].state

    def pair(chosen: Action, rejected: Action) -> PreferencePair:
        return PreferencePair(state, chosen, rejected)

    plan_a, plan_b = SelectOption(control_id="plan", option="a"), SelectOption(control_id="plan", option="b")
    assert is_value_pair(pair(plan_a, plan_b))
    assert is_value_pair(pair(SendTextToChat(text="Hi"), SendTextToChat(text="Hello")))
    assert not is_value_pair(pair(plan_a, SelectOption(control_id="speed", option="a")))  # another control
    assert not is_value_pair(pair(SendTextToChat(text="Hi"), CloseChat(resolution="done")))  # another type
