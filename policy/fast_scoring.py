"""The fast scoring path: each state's prompt and all its candidates, as a prefix tree, in one lean pass.

``policy.scoring`` (the reference) runs one pass over the prompt for the first-token pruning, then a second
pass over the prompt and every surviving candidate packed behind it, through the ``transformers`` forward with
a dense 4-D mask, and runs the vocabulary head once per candidate token. Measured on the default policy
(docs/decisions/0010-fast-candidate-scoring.md), most of a proposal's time went to the second encoding of the
prompt, the framework's per-call overhead (mask building, output capturing, kernel lookups) and the vocabulary
head. This path:

* runs a lean forward of the decoder's own modules (Llama and Qwen2 layouts: embeddings, RMSNorm, rotary q/k/v
  projections with grouped-query attention, gated MLP), so any checkpoint of these architectures works, ours or
  a pretrained Qwen2.5, with its own weights;
* lays each state out as its prompt followed by its candidates as a prefix tree: candidates sharing a prefix
  ("select new_plan = ...", "send Hello ...") share its nodes; a node attends to the prompt and to its own
  ancestors, at the position it would have after the prompt, so each candidate is scored exactly as if alone;
* packs several states in one row with no padding (projections and MLP run on all tokens at once, attention
  per state);
* reads the first-token log-probabilities at the prompt's last position, applies the pruning rule, and runs
  the vocabulary head (the most expensive part) only at tree nodes of the candidates that survive, once per
  node rather than once per candidate token.

Scores equal the reference path's within float rounding (tests/policy/test_fast_scoring.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2"})
HEAD_CHUNK_ELEMENTS = 1 << 24  # logits held per head call on a CPU: rows x vocabulary under 64 MiB of fp32
HEAD_CHUNK_ELEMENTS_GPU = 1 << 28  # on a GPU fewer, larger head calls (1 GiB of fp32 logits at most)
# Tokens per packed pass. On CPU a larger pass buys nothing (the projections are compute-bound from ~100 rows
# on) and its activations fall out of cache; the bound also keeps one pass's masks small.
PACK_TOKENS = 4096


@dataclass(frozen=True)
class ScoredState:
    """The candidates that survived pruning (indices into the state's candidate list, in order) and their
    sequence log-probabilities."""

    kept: list[int]
    logprobs: list[float]


class CandidateScorer(Protocol):
    """The scoring interface: ``PackedDecoder`` (weights in process) and ``policy.remote.SGLangScorer`` (a GPU
    server) both have it."""

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        candidates: Sequence[Sequence[Sequence[int]]],
        prune_logprob: float | None = None,
    ) -> list[ScoredState]: ...


@dataclass
class _Tree:
    """One state's candidates as a prefix tree. A node is a proper prefix of a candidate; its token is the
    prefix's last token, and its output predicts the next token. ``ancestors[i]`` lists node ``i``'s ancestors
    and itself, the tree nodes it attends to besides the prompt."""

    tokens: list[int]
    positions: list[int]
    ancestors: list[list[int]]
    steps: list[list[tuple[int, int]]]  # per candidate: (node predicting it, token) for every token after the first


def supports(model: PreTrainedModel) -> bool:
    """True when ``model`` has the decoder layout the lean forward implements (full attention everywhere)."""
    if not isinstance(model, PreTrainedModel):  # e.g. a peft wrapper during LoRA training
        return False
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "use_sliding_window", False):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        return False
    decoder = model.get_decoder()
    parts = all(hasattr(decoder, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))
    return parts and isinstance(model.get_output_embeddings(), torch.nn.Linear)


def build_tree(prompt_length: int, candidates: Sequence[Sequence[int]]) -> _Tree:
    tree = _Tree(tokens=[], positions=[], ancestors=[], steps=[])
    children: dict[tuple[int, int], int] = {}  # (parent node, -1 for the prompt; token) -> node
    for cand in candidates:
        parent, steps = -1, []
        for j in range(len(cand) - 1):  # the last token is only predicted, never read
            node = children.get((parent, cand[j]))
            if node is None:
                node = len(tree.tokens)
                children[(parent, cand[j])] = node
                tree.tokens.append(cand[j])
                tree.positions.append(prompt_length + j)
                tree.ancestors.append([*(tree.ancestors[parent] if parent >= 0 else []), node])
            steps.append((node, cand[j + 1]))
            parent = node
        tree.steps.append(steps)
    return tree


_CAUSAL = np.zeros((0, 0), dtype=np.float32)


def _causal_block(n: int) -> np.ndarray:
    """An n x n additive causal mask (a view of a cached, grown-on-demand array: callers copy from it)."""
    global _CAUSAL
    if _CAUSAL.shape[0] < n:
        size = max(n, 2 * _CAUSAL.shape[0], 256)
        _CAUSAL = np.triu(np.full((size, size), -np.inf, dtype=np.float32), k=1)
    return _CAUSAL[:n, :n]


@dataclass
class _Segment:
    """One state's span of the packed row and its additive attention mask (None: plain causal)."""

    start: int
    length: int
    mask: np.ndarray | None


class PackedDecoder:
    """A lean, inference-only forward over packed sequences that reuses a Llama/Qwen2 model's own modules."""

    def __init__(self, model: PreTrainedModel, padded_attention: bool | None = None) -> None:
        if not supports(model):
            raise TypeError(f"{type(model).__name__} ({model.config.model_type}): no lean forward for this layout")
        decoder = model.get_decoder()
        head = model.get_output_embeddings()
        assert isinstance(head, torch.nn.Linear)
        self.embed = decoder.embed_tokens
        self.layers = list(decoder.layers)
        self.norm = decoder.norm
        self.rotary = decoder.rotary_emb
        self.head = head
        attention = self.layers[0].self_attn
        self.head_dim = int(attention.head_dim)
        self.scaling = float(attention.scaling)
        self.heads = int(model.config.num_attention_heads)
        self.kv_heads = int(model.config.num_key_value_heads)
        self.device = head.weight.device
        self.dtype = head.weight.dtype
        self.padded_attention = padded_attention  # None: padded on a GPU, state by state on a CPU
        self.head_chunk_elements = HEAD_CHUNK_ELEMENTS if self.device.type == "cpu" else HEAD_CHUNK_ELEMENTS_GPU

    # ---- the forward ---------------------------------------------------------------------------------------

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def forward(self, tokens: list[int], positions: list[int], segments: Sequence[_Segment]) -> torch.Tensor:
        """Final hidden states (after the decoder's norm) of a packed row, shape (tokens, hidden). Segments must
        be contiguous and in order, covering the row."""
        n = len(tokens)
        hidden = self.embed(torch.tensor([tokens], dtype=torch.long, device=self.device))
        cos, sin = self.rotary(hidden, torch.tensor([positions], dtype=torch.long, device=self.device))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        attend = self._padded_attention(segments) if self._pad(segments) else self._segment_attention(segments)
        for layer in self.layers:
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = self._rope(attn.q_proj(x).view(1, n, self.heads, self.head_dim).transpose(1, 2), cos, sin)
            k = self._rope(attn.k_proj(x).view(1, n, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            v = attn.v_proj(x).view(1, n, self.kv_heads, self.head_dim).transpose(1, 2)
            attended = attend(q, k, v)
            hidden = hidden + attn.o_proj(attended.transpose(1, 2).reshape(1, n, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.norm(hidden[0])

    def _pad(self, segments: Sequence[_Segment]) -> bool:
        if self.padded_attention is not None:
            return self.padded_attention and len(segments) > 1
        # Auto: on a GPU one padded attention call per layer beats a kernel launch per state; on a CPU the loop
        # does no work on padding and its per-call overhead is small beside the projections.
        return self.device.type != "cpu" and len(segments) > 1

    def _segment_attention(self, segments: Sequence[_Segment]) -> Callable[..., torch.Tensor]:
        """Attention state by state over the packed row (each its own SDPA call)."""
        masks = [
            None if s.mask is None else torch.from_numpy(s.mask).to(device=self.device, dtype=self.dtype)
            for s in segments
        ]
        gqa = self.kv_heads != self.heads

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            parts = [
                F.scaled_dot_product_attention(
                    q[:, :, s.start : s.start + s.length],
                    k[:, :, s.start : s.start + s.length],
                    v[:, :, s.start : s.start + s.length],
                    attn_mask=mask,
                    is_causal=mask is None,
                    scale=self.scaling,
                    enable_gqa=gqa,
                )
                for s, mask in zip(segments, masks, strict=True)
            ]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

        return attend

    def _padded_attention(self, segments: Sequence[_Segment]) -> Callable[..., torch.Tensor]:
        """Attention for all states in one SDPA call: the packed row gathered into a padded (states, heads,
        longest, dim) batch with one additive mask, and scattered back."""
        width = max(s.length for s in segments)
        total = segments[-1].start + segments[-1].length
        index = np.full((len(segments), width), total, dtype=np.int64)  # ``total``: a zero row appended below
        mask = np.full((len(segments), 1, width, width), -np.inf, dtype=np.float32)
        mask[:, :, :, 0] = 0.0  # padding rows see one key: no all -inf row, no NaN (their output is dropped)
        for b, s in enumerate(segments):
            index[b, : s.length] = np.arange(s.start, s.start + s.length)
            mask[b, 0, : s.length, : s.length] = _causal_block(s.length) if s.mask is None else s.mask
            mask[b, 0, : s.length, s.length :] = -np.inf
        gather = torch.from_numpy(index).to(self.device)
        valid = torch.from_numpy(index < total).to(self.device)
        additive = torch.from_numpy(mask).to(device=self.device, dtype=self.dtype)
        gqa = self.kv_heads != self.heads

        def padded(x: torch.Tensor) -> torch.Tensor:  # (1, h, n, d) -> (states, h, width, d)
            x = torch.cat((x, x.new_zeros(1, x.shape[1], 1, x.shape[3])), dim=2)[0]
            return x[:, gather].transpose(0, 1)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = F.scaled_dot_product_attention(
                padded(q), padded(k), padded(v), attn_mask=additive, scale=self.scaling, enable_gqa=gqa
            )
            return out.transpose(0, 1)[:, valid].unsqueeze(0)  # segments in order: the packed order again

        return attend

    @torch.inference_mode()
    def last_hidden(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """The final hidden state (after the norm) at each sequence's last token, shape (len(seqs), hidden):
        sequences packed without padding, each causal on its own."""
        if any(len(s) == 0 for s in seqs):
            raise ValueError("empty sequence")
        segments, start = [], 0
        for seq in seqs:
            segments.append(_Segment(start, len(seq), None))
            start += len(seq)
        hidden = self.forward([t for s in seqs for t in s], [j for s in seqs for j in range(len(s))], segments)
        return hidden[torch.tensor([s.start + s.length - 1 for s in segments], device=self.device)]

    def token_logprobs(self, hidden: torch.Tensor, rows: Sequence[int], tokens: Sequence[int]) -> list[float]:
        """``log_softmax(head(hidden))[rows[i], tokens[i]]``: the head runs once per distinct row, a bounded
        chunk of rows at a time."""
        if not rows:
            return []
        distinct = sorted(set(rows))
        where = {row: i for i, row in enumerate(distinct)}
        local = torch.tensor([where[r] for r in rows], device=self.device)
        wanted = torch.tensor(list(tokens), device=self.device)
        chunk = max(1, self.head_chunk_elements // int(self.head.weight.shape[0]))
        out = torch.empty(len(rows), dtype=torch.float32, device=self.device)
        for start in range(0, len(distinct), chunk):
            index = torch.tensor(distinct[start : start + chunk], device=self.device)
            logits = self.head(hidden[index]).float()
            here = (local >= start) & (local < start + chunk) if len(distinct) > chunk else None
            lrows = local if here is None else local[here] - start
            picked = logits[lrows, wanted if here is None else wanted[here]]
            # log-sum-exp in place: the logits are no longer needed once the wanted ones are picked
            top = logits.amax(dim=-1, keepdim=True)
            normaliser = logits.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(-1))
            values = picked - normaliser[lrows]
            if here is None:
                out = values
            else:
                out[here] = values
        return out.cpu().tolist()

    # ---- candidate scoring ---------------------------------------------------------------------------------

    def _tree_mask(self, prompt_length: int, tree: _Tree) -> np.ndarray:
        """Additive mask over the prompt + tree span: causal on the prompt, prompt + ancestors for a node. Built
        in numpy: a few array operations instead of hundreds of small tensor ones."""
        p, size = prompt_length, prompt_length + len(tree.tokens)
        mask = np.full((size, size), -np.inf, dtype=np.float32)
        mask[:p, :p] = _causal_block(p)
        mask[p:, :p] = 0.0
        depth = np.fromiter((len(anc) for anc in tree.ancestors), dtype=np.int64, count=len(tree.ancestors))
        rows = np.repeat(np.arange(p, size), depth)
        cols = p + np.fromiter((a for anc in tree.ancestors for a in anc), dtype=np.int64, count=int(depth.sum()))
        mask[rows, cols] = 0.0
        return mask

    @torch.inference_mode()
    def score(
        self,
        prompts: Sequence[Sequence[int]],
        candidates: Sequence[Sequence[Sequence[int]]],
        prune_logprob: float | None = None,
    ) -> list[ScoredState]:
        """Sequence log-probabilities of each state's candidates, after dropping those whose first token is less
        likely than ``exp(-prune_logprob)`` times the state's likeliest first token (None keeps them all)."""
        if len(prompts) != len(candidates):
            raise ValueError("one candidate list per prompt")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        if any(len(c) == 0 for cands in candidates for c in cands):
            raise ValueError("empty candidate")
        live = [b for b, cands in enumerate(candidates) if cands]
        if not live:
            return [ScoredState([], []) for _ in prompts]
        trees = {b: build_tree(len(prompts[b]), candidates[b]) for b in live}
        tokens: list[int] = []
        positions: list[int] = []
        segments: list[_Segment] = []
        for b in live:
            tree = trees[b]
            segments.append(
                _Segment(len(tokens), len(prompts[b]) + len(tree.tokens), self._tree_mask(len(prompts[b]), tree))
            )
            tokens += [*prompts[b], *tree.tokens]
            positions += [*range(len(prompts[b])), *tree.positions]
        hidden = self.forward(tokens, positions, segments)
        # first tokens, predicted at each prompt's last position
        rows = [s.start + len(prompts[b]) - 1 for b, s in zip(live, segments, strict=True) for _ in candidates[b]]
        firsts = self.token_logprobs(hidden, rows, [c[0] for b in live for c in candidates[b]])
        kept: dict[int, list[int]] = {}
        totals: dict[int, list[float]] = {}
        at = 0
        for b in live:
            lps = firsts[at : at + len(candidates[b])]
            at += len(candidates[b])
            floor = max(lps) - prune_logprob if prune_logprob is not None else -float("inf")
            kept[b] = [c for c, lp in enumerate(lps) if lp >= floor]
            totals[b] = [lps[c] for c in kept[b]]
        # the rest of every surviving candidate, at its tree nodes
        rows, wanted = [], []
        for b, s in zip(live, segments, strict=True):
            base = s.start + len(prompts[b])
            for c in kept[b]:
                for node, token in trees[b].steps[c]:
                    rows.append(base + node)
                    wanted.append(token)
        rest = self.token_logprobs(hidden, rows, wanted)
        at = 0
        for b in live:
            for i, c in enumerate(kept[b]):
                n = len(trees[b].steps[c])
                totals[b][i] += sum(rest[at : at + n])
                at += n
        return [ScoredState(kept.get(b, []), totals.get(b, [])) for b in range(len(prompts))]


def score_states(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    prune_logprob: float | None = None,
    *,
    padded_attention: bool | None = None,
) -> list[ScoredState]:
    """The fast path for a supported model (``supports``): see ``PackedDecoder.score``."""
    return PackedDecoder(model, padded_attention).score(prompts, candidates, prune_logprob)


def last_hidden_states(
    model: PreTrainedModel, seqs: Sequence[Sequence[int]], *, padded_attention: bool | None = None
) -> torch.Tensor:
    """The fast path's final hidden state at each sequence's last token (after the decoder's norm)."""
    return PackedDecoder(model, padded_attention).last_hidden(seqs)
