"""Packed candidate scoring equals scoring each candidate in a pass of its own."""

from __future__ import annotations

import torch

from policy.model import ModelConfig, build_model
from policy.scoring import score_candidates


def _separate(model: torch.nn.Module, prompt: list[int], cand: list[int]) -> float:
    ids = torch.tensor([prompt + cand])
    with torch.no_grad():
        logits = model(ids).logits[0].log_softmax(-1)
    return sum(float(logits[len(prompt) - 1 + j, token]) for j, token in enumerate(cand))


def test_packed_scores_match_separate_passes() -> None:
    torch.manual_seed(0)
    for architecture in ("llama", "qwen2"):
        model = build_model(
            ModelConfig(architecture=architecture, hidden_size=32, layers=2, heads=2, kv_heads=1, intermediate_size=64),
            vocab_size=50,
            pad_id=0,
            bos_id=1,
            eos_id=2,
        ).eval()
        prompts = [[5, 6, 7, 8, 1], [9, 1]]
        candidates = [[[10, 11, 2], [12, 2], [10, 13, 14, 2]], [[15, 2]]]
        packed = score_candidates(model, prompts, candidates)
        for b, prompt in enumerate(prompts):
            for c, cand in enumerate(candidates[b]):
                assert abs(packed[b][c] - _separate(model, prompt, cand)) < 1e-4, (architecture, b, c)


def test_empty_batch_and_bad_input() -> None:
    model = build_model(ModelConfig(hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=32), 20, 0, 1, 2)
    assert score_candidates(model, [], []) == []
    try:
        score_candidates(model, [[3, 1]], [[[]]])
    except ValueError as exc:
        assert "empty candidate" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("an empty candidate must be rejected")
