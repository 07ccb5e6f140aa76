"""Scoring candidate continuations of a prompt with a causal LM, in one forward pass per batch of states.

Every state's prompt is followed by all of its candidates packed into one sequence. A 4-D attention mask lets
each candidate token see the whole prompt and the earlier tokens of its own candidate only, and position ids
restart at the prompt's end for every candidate, so each candidate is scored exactly as if it were alone after
the prompt (checked against separate passes in the tests) while the prompt is encoded once. Logits are computed
only where a candidate token is predicted, not over the whole sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel


def _decoder_and_head(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    head = model.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embeddings: not a causal LM")
    return model.get_decoder(), head


@torch.inference_mode()
def next_token_logprobs(model: PreTrainedModel, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
    """Log-probabilities of the token after each prompt, shape (len(prompts), vocabulary)."""
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        ids[b, : len(prompt)] = torch.tensor(prompt)
        mask[b, : len(prompt)] = 1
    decoder, head = _decoder_and_head(model)
    hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    last = hidden[torch.arange(len(prompts)), torch.tensor([len(p) - 1 for p in prompts])]
    return torch.log_softmax(head(last).float(), dim=-1).cpu()


@torch.inference_mode()
def score_candidates(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
) -> list[list[float]]:
    """Sequence log-probabilities: ``out[b][c] = log p(candidates[b][c] | prompts[b])``.

    Every prompt must end with the token after which the action is generated (the action-start marker) and every
    candidate must be non-empty (it ends with the action-end marker).
    """
    if len(prompts) != len(candidates):
        raise ValueError("one candidate list per prompt")
    lengths = [len(p) + sum(len(c) for c in cands) for p, cands in zip(prompts, candidates, strict=True)]
    batch, width = len(prompts), max(lengths, default=0)
    if batch == 0:
        return []
    device = next(model.parameters()).device
    ids = torch.zeros(batch, width, dtype=torch.long)
    positions = torch.zeros(batch, width, dtype=torch.long)
    allowed = torch.zeros(batch, width, width, dtype=torch.bool)
    allowed[:, torch.arange(width), torch.arange(width)] = True  # padding rows attend to themselves: no NaNs
    # For every predicted token: (row, position whose logits predict it, token id, candidate index).
    rows: list[int] = []
    sources: list[int] = []
    targets: list[int] = []
    owners: list[tuple[int, int]] = []
    for b, (prompt, cands) in enumerate(zip(prompts, candidates, strict=True)):
        p = len(prompt)
        if p == 0:
            raise ValueError("empty prompt")
        ids[b, :p] = torch.tensor(prompt)
        positions[b, :p] = torch.arange(p)
        allowed[b, :p, :p] = torch.tril(torch.ones(p, p, dtype=torch.bool))
        start = p
        for c, cand in enumerate(cands):
            n = len(cand)
            if n == 0:
                raise ValueError("empty candidate")
            ids[b, start : start + n] = torch.tensor(cand)
            positions[b, start : start + n] = torch.arange(p, p + n)
            allowed[b, start : start + n, :p] = True
            allowed[b, start : start + n, start : start + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            for j, token in enumerate(cand):
                rows.append(b)
                sources.append(p - 1 if j == 0 else start + j - 1)
                targets.append(token)
                owners.append((b, c))
            start += n
    decoder, head = _decoder_and_head(model)
    hidden = decoder(
        input_ids=ids.to(device),
        attention_mask=allowed.unsqueeze(1).to(device),
        position_ids=positions.to(device),
    ).last_hidden_state
    # Every candidate's first token is predicted from the same (prompt-end) position: the vocabulary head and
    # its log-softmax, the most expensive part of a pass, run once per distinct position.
    distinct: dict[tuple[int, int], int] = {}
    index = [distinct.setdefault(pair, len(distinct)) for pair in zip(rows, sources, strict=True)]
    pairs = list(distinct)
    picked = hidden[torch.tensor([r for r, _ in pairs]), torch.tensor([s for _, s in pairs])]
    logprobs = torch.log_softmax(head(picked).float(), dim=-1)
    token_lp = logprobs[torch.tensor(index), torch.tensor(targets, device=device)].cpu().tolist()
    out: list[list[float]] = [[0.0] * len(cands) for cands in candidates]
    for (b, c), lp in zip(owners, token_lp, strict=True):
        out[b][c] += lp
    return out
