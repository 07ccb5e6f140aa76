"""GenerativeCritic on the tiny sandbox policy: it learns, scores consistently, saves and loads exactly, refuses bad
input; and the pretrained path (a tiny random Qwen2 checkpoint + LoRA, verdict words as single tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.base import clone

from critic.base import Critic, accept_scores, labels
from critic.errors import NotFittedError
from critic.generative import SPECIAL_LABELS, GenerativeCritic
from critic.persist import load_critic
from policy.lora import LoraSettings
from policy.policy import LMPolicy
from policy.serialise import serialise_state
from schemas import FeedbackRecord
from schemas.trace import Trace
from tests.policy.checkpoints import tiny_pretrained_checkpoint
from tests.policy.test_policy import QUICK


@pytest.fixture(scope="module")
def balanced(feedback_records: list[FeedbackRecord]) -> tuple[list[FeedbackRecord], np.ndarray]:
    """Every rejection (only ~4% of the fixture) and the first 30 acceptances, in their original order."""
    y = labels(feedback_records)
    keep = sorted([i for i in range(len(y)) if y[i] == 0] + [i for i in range(len(y)) if y[i] == 1][:30])
    return [feedback_records[i] for i in keep], y[keep]


@pytest.fixture(scope="module")
def fitted(
    tiny_policy: tuple[LMPolicy, Path], feedback_records: list[FeedbackRecord]
) -> tuple[GenerativeCritic, np.ndarray]:
    """The default recipe (2 epochs, last 10% held out) on every feedback record."""
    y = labels(feedback_records)
    return GenerativeCritic(tiny_policy[1], progress=False).fit(feedback_records, y), y


def test_scores_are_probabilities_and_validation_is_recorded(
    fitted: tuple[GenerativeCritic, np.ndarray],
    feedback_records: list[FeedbackRecord],
    tiny_policy: tuple[LMPolicy, Path],
) -> None:
    critic, _ = fitted
    assert isinstance(critic, Critic)
    proba = critic.predict_proba(feedback_records)
    assert proba.shape == (len(feedback_records), 2) and proba.dtype == np.float64
    assert np.all((proba >= 0) & (proba <= 1)) and np.allclose(proba.sum(axis=1), 1.0)
    # the project's small BPE splits " accept" into pieces, so the verdicts are new special tokens
    assert critic.label_tokens_ == "special"
    vocab = critic.codec_.tokenizer.get_vocab()
    assert (vocab[SPECIAL_LABELS[0]], vocab[SPECIAL_LABELS[1]]) == (critic.accept_token_id_, critic.reject_token_id_)
    history = critic.history_
    assert history.val_rows == len(feedback_records) // 10 and history.train_rows + history.val_rows == len(proba)
    assert history.evaluations and all("val_log_loss" in row and "val_auc" in row for row in history.evaluations)
    assert history.steps == 2 * -(-history.train_rows // 16)
    assert critic.policy_version_ == tiny_policy[0].version_
    assert critic.predict_proba([]).shape == (0, 2)


def test_batched_scores_equal_one_at_a_time(
    fitted: tuple[GenerativeCritic, np.ndarray], feedback_records: list[FeedbackRecord]
) -> None:
    """Padding inside a batch must not change any score (inputs of different lengths share a batch)."""
    critic, _ = fitted
    items = feedback_records[:6]
    batched = accept_scores(critic, items)
    single = np.array([accept_scores(critic, [item])[0] for item in items])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.std() > 0  # the scores depend on the input


def test_fast_path_equals_the_padded_reference(
    fitted: tuple[GenerativeCritic, np.ndarray], feedback_records: list[FeedbackRecord]
) -> None:
    """The critic scores through the policy's fast path (packed, lean forward); the padded transformers
    forward gives the same probabilities."""
    critic, _ = fitted
    seqs = critic._encode(feedback_records[:40])
    fast = critic._accept_probability(seqs, fast=True)
    reference = critic._accept_probability(seqs, fast=False)
    np.testing.assert_allclose(fast, reference, atol=1e-4)
    assert reference.std() > 0


def test_learns_to_separate_training_rows(
    tiny_policy: tuple[LMPolicy, Path], balanced: tuple[list[FeedbackRecord], np.ndarray], tmp_path: Path
) -> None:
    X, y = balanced
    critic = GenerativeCritic(tiny_policy[1], epochs=25, lr=1e-2, warmup_steps=5, val_fraction=0.0, progress=False)
    p = accept_scores(critic.fit(X, y), X)
    assert p[y == 1].mean() > p[y == 0].mean() + 0.5
    assert critic.history_.stopped == "epochs" and critic.history_.val_rows == 0
    # nothing held out: no best validation loss (inf) survives a save as standard JSON and comes back
    path = critic.save(tmp_path / "critic")
    json.loads((path / "critic.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert GenerativeCritic.load(path).history_ == critic.history_


def test_save_load_gives_identical_scores(
    fitted: tuple[GenerativeCritic, np.ndarray], feedback_records: list[FeedbackRecord], tmp_path: Path
) -> None:
    critic, _ = fitted
    path = critic.save(tmp_path / "critic")
    critic.save(path)  # replacing an existing directory works too
    loaded = load_critic(path)  # the shared loader dispatches on critic.json's kind
    assert isinstance(loaded, GenerativeCritic)
    items = feedback_records[:40]
    np.testing.assert_array_equal(loaded.predict_proba(items), critic.predict_proba(items))
    assert (loaded.accept_token_id_, loaded.reject_token_id_) == (critic.accept_token_id_, critic.reject_token_id_)
    assert loaded.history_ == critic.history_ and loaded.policy_version_ == critic.policy_version_
    # the readers it serialises prompts with, as its policy does (the checkbox marks read the preconditions)
    assert loaded.preconditions_ == critic.preconditions_ and loaded.styles_ == critic.styles_
    assert loaded.get_params()["epochs"] == critic.epochs
    assert not list(tmp_path.glob(".critic*"))  # no temporary or old directory left behind


def test_time_budget_stops_training(
    tiny_policy: tuple[LMPolicy, Path], balanced: tuple[list[FeedbackRecord], np.ndarray]
) -> None:
    X, y = balanced
    critic = GenerativeCritic(tiny_policy[1], epochs=50, time_budget_s=0.0, progress=False).fit(X, y)
    assert critic.history_.stopped == "time budget" and critic.history_.steps == 1


def test_unfitted_and_bad_input(
    tiny_policy: tuple[LMPolicy, Path], feedback_records: list[FeedbackRecord], tmp_path: Path
) -> None:
    critic = clone(GenerativeCritic(tiny_policy[1], epochs=3, progress=False))  # scikit-learn's contract holds
    assert critic.get_params()["epochs"] == 3
    with pytest.raises(NotFittedError):
        critic.predict_proba(feedback_records[:2])
    with pytest.raises(NotFittedError):
        critic.save(tmp_path / "x")
    X = feedback_records[:4]
    with pytest.raises(ValueError, match="X is empty"):
        critic.fit([], [])
    with pytest.raises(ValueError, match="y has 3 labels"):
        critic.fit(X, [1, 0, 1])
    with pytest.raises(ValueError, match="single class"):
        critic.fit(X, [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"0 \(reject\) / 1"):
        critic.fit(X, [1, 0, 2, 1])
    with pytest.raises(ValueError, match=r"X\[1\] is not a CriticInput"):
        critic.fit([X[0], "not a record", X[2]], [1, 0, 1])
    with pytest.raises(ValueError, match="policy_dir is required"):
        GenerativeCritic(progress=False).fit(X, [1, 0, 1, 1])
    with pytest.raises(ValueError, match="is not a saved LMPolicy"):
        GenerativeCritic(tmp_path, progress=False).fit(X, [1, 0, 1, 1])
    with pytest.raises(ValueError, match="class_weight"):
        bad_weight: Any = "auto"
        GenerativeCritic(tiny_policy[1], class_weight=bad_weight, progress=False).fit(X, [1, 0, 1, 1])
    with pytest.raises(ValueError, match="not a critic directory"):
        GenerativeCritic.load(tmp_path)


def test_pretrained_qwen2_checkpoint_uses_lora_and_text_verdicts(
    critic_traces: list[Trace], balanced: tuple[list[FeedbackRecord], np.ndarray], tmp_path: Path
) -> None:
    """A tiny random Qwen2 "pretrained" checkpoint whose tokenizer has " accept"/" reject" as single tokens, as a
    real pretrained BPE does: the critic keeps those tokens, tunes LoRA adapters only, and saves a plain model."""
    texts = [serialise_state(step.state) for trace in critic_traces[:10] for step in trace.steps]
    _, tokenizer = tiny_pretrained_checkpoint(texts + [" accept reject"] * 500, tmp_path / "base")
    policy = LMPolicy(
        training=QUICK, pretrained=str(tmp_path / "base"), lora=LoraSettings(r=4, alpha=8), progress=False
    )
    policy_dir = policy.fit(critic_traces[:8]).save(tmp_path / "policy")
    assert policy.model_ is not None
    before = {k: v.clone() for k, v in policy.model_.state_dict().items()}

    X, y = balanced
    critic = GenerativeCritic(policy_dir, epochs=2, progress=False).fit(X, y)
    assert critic.label_tokens_ == "text" and critic.lora_ is not None
    assert [critic.accept_token_id_] == tokenizer.encode(" accept", add_special_tokens=False)
    assert type(critic.model_).__name__ == "Qwen2ForCausalLM"  # adapters merged away
    changed = [k for k, v in critic.model_.state_dict().items() if not v.equal(before[k])]
    assert any("q_proj" in k for k in changed) and not any("mlp" in k or "embed" in k for k in changed)
    loaded = GenerativeCritic.load(critic.save(tmp_path / "critic"))
    np.testing.assert_array_equal(loaded.predict_proba(X[:8]), critic.predict_proba(X[:8]))
