"""LMPolicy end to end on a small sandbox sample: fit, valid proposals, save/load identity, the LoRA path."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from transformers import AutoModelForCausalLM

from policy.candidates import TemplateBank, enumerate_candidates
from policy.lora import LoraSettings
from policy.model import ModelConfig
from policy.policy import LMPolicy, NotFittedError
from policy.serialise import serialise_state
from policy.train import TrainConfig
from sandbox.generate import iter_traces
from schemas.actions import validate_action
from schemas.state import UIState
from schemas.trace import Trace
from tests.policy.checkpoints import tiny_pretrained_checkpoint
from tests.schemas.strategies import ui_states

TINY = ModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
QUICK = TrainConfig(epochs=1, batch_size=16, eval_every=20, warmup_steps=5, threads=1)


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    return iter_traces(40, 3)


@pytest.fixture(scope="module")
def fitted(traces: list[Trace]) -> LMPolicy:
    return LMPolicy(model=TINY, training=QUICK, vocab_size=600, progress=False).fit(traces[:30])


def test_proposals_are_valid_ranked_and_bound_to_the_state(fitted: LMPolicy, traces: list[Trace]) -> None:
    states = [step.state for trace in traces[30:] for step in trace.steps]
    proposals = fitted.propose_batch(states, k=3)
    assert len(proposals) == len(states)
    for state, proposal in zip(states, proposals, strict=True):
        assert proposal is not None
        assert proposal.state_etag == state.etag and proposal.step == state.step
        validate_action(proposal.action, state.screen)
        ranked = [proposal.features, *[a.features for a in proposal.alternatives]]
        assert [f.rank for f in ranked] == list(range(len(ranked)))
        assert all(a.probability >= b.probability for a, b in itertools.pairwise(ranked))
        assert 0.0 <= proposal.features.probability <= 1.0 and proposal.features.logprob <= 0.0
        for alternative in proposal.alternatives:
            validate_action(alternative.action, state.screen)


def test_save_load_gives_identical_scores(fitted: LMPolicy, traces: list[Trace], tmp_path: Path) -> None:
    fitted.save(tmp_path / "policy")
    loaded = LMPolicy.load(tmp_path / "policy")
    assert loaded.version_ == fitted.version_
    assert loaded.requests_ is not None and fitted.requests_ is not None  # the pending-request reader travels too
    assert loaded.requests_.to_dict() == fitted.requests_.to_dict()
    assert loaded.cues_ is not None and fitted.cues_ is not None and loaded.cues_.cues_ == fitted.cues_.cues_
    assert loaded.record_check_ is not None and fitted.record_check_ is not None
    assert loaded.record_check_.to_dict() == fitted.record_check_.to_dict()
    assert loaded.preconditions_ is not None and fitted.preconditions_ is not None
    assert loaded.preconditions_.to_dict() == fitted.preconditions_.to_dict()
    assert loaded.choices_ is not None and fitted.choices_ is not None
    assert loaded.choices_.to_dict() == fitted.choices_.to_dict()
    assert loaded.styles_ is not None and fitted.styles_ is not None
    assert loaded.styles_.to_dict() == fitted.styles_.to_dict()
    states = [step.state for step in traces[31].steps]
    for a, b in zip(fitted.propose_batch(states), loaded.propose_batch(states), strict=True):
        assert a is not None and b is not None
        assert a.action == b.action
        assert a.features.logprob == pytest.approx(b.features.logprob, abs=1e-6)
    # the directory is a plain transformers checkpoint
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "policy")).config.model_type == "llama"


def test_unfitted_policy_and_bad_directory_fail_clearly(tmp_path: Path, traces: list[Trace]) -> None:
    with pytest.raises(NotFittedError):
        LMPolicy().propose(traces[0].steps[0].state)
    with pytest.raises(FileNotFoundError, match="not a policy directory"):
        LMPolicy.load(tmp_path)
    with pytest.raises(ValueError, match="no traces"):
        LMPolicy().fit([])


@settings(max_examples=40, deadline=None)
@given(state=ui_states())
def test_every_candidate_of_any_screen_is_valid(state: UIState) -> None:
    bank = TemplateBank()
    bank.add(state.process_id, "chat", "hello ⟦chat.id⟧")
    for control in state.screen.controls:
        bank.add(state.process_id, control.id, "⟦screen.nothing⟧")
        bank.add(state.process_id, control.id, "12")
    for candidate in enumerate_candidates(state, bank):
        validate_action(candidate.action, state.screen)


def test_a_state_is_offered_its_screens_values_first_within_the_cap() -> None:
    bank = TemplateBank(max_per_target=3)
    for value, times in (("Welcome.", 9), ("Your order is on its way.", 8), ("Anything else?", 7)):
        for _ in range(times):
            bank.add("delivery", "chat", value, "greet")
    for _ in range(2):
        bank.add("delivery", "chat", "The refund is issued.", "refund")
    bank.add("delivery", "chat", "The refund takes five days.", "refund")
    # The process's three most frequent crowd out the refund screen's own replies; that screen's come first.
    assert bank.templates("delivery", "chat") == ["Welcome.", "Your order is on its way.", "Anything else?"]
    assert bank.templates("delivery", "chat", "refund") == [
        "The refund is issued.",
        "The refund takes five days.",
        "Welcome.",
    ]
    # A screen the bank has not seen, and a bank saved before screens were counted, offer the process's.
    assert bank.templates("delivery", "chat", "unseen") == bank.templates("delivery", "chat")
    old = TemplateBank.from_dict({k: v for k, v in bank.to_dict().items() if k != "screen_counts"})
    assert old.templates("delivery", "chat", "refund") == bank.templates("delivery", "chat")
    assert TemplateBank.from_dict(bank.to_dict()).templates("delivery", "chat", "refund") == bank.templates(
        "delivery", "chat", "refund"
    )


def test_pretrained_checkpoint_with_lora(tmp_path: Path, traces: list[Trace]) -> None:
    """The paper's path (a pretrained Qwen2 checkpoint + LoRA) on a tiny randomly initialised Qwen2 built from a
    config: its own tokenizer is kept, adapters train, the merged result saves and loads without peft."""
    texts = [serialise_state(step.state) for trace in traces[:10] for step in trace.steps]
    # A "pretrained" tokenizer: none of our special tokens.
    base, tokenizer = tiny_pretrained_checkpoint(texts, tmp_path / "base")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    policy = LMPolicy(
        training=QUICK, pretrained=str(tmp_path / "base"), lora=LoraSettings(r=4, alpha=8), progress=False
    ).fit(traces[:8])
    assert policy.codec_ is not None and policy.codec_.action_end == [tokenizer.eos_token_id]
    model = policy.model_
    assert model is not None and type(model).__name__ == "Qwen2ForCausalLM"  # merged: no peft wrapper left
    changed = [k for k, v in model.state_dict().items() if k in before and not v.equal(before[k])]
    assert any("q_proj" in k for k in changed) and not any("mlp" in k for k in changed)
    policy.save(tmp_path / "tuned")
    loaded = LMPolicy.load(tmp_path / "tuned")
    proposal = loaded.propose(traces[9].steps[0].state)
    assert proposal is not None
    validate_action(proposal.action, traces[9].steps[0].state.screen)
