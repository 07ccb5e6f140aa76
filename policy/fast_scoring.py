"""The fast scoring path: each state's prompt and its candidates as a prefix tree, through a lean forward.

``policy.scoring`` (the reference) runs one pass over the prompt for the first-token pruning, then a second
pass over the prompt and every surviving candidate packed behind it, through the ``transformers`` forward with
a dense 4-D mask, and runs the vocabulary head once per candidate token. Measured on the default policy
(docs/decisions/0010-fast-candidate-scoring.md), most of a proposal's time went to the second encoding of the
prompt, the framework's per-call overhead (mask building, output capturing, kernel lookups) and the vocabulary
head. This path:

* runs a lean forward of the decoder's own weights (Llama and Qwen2 layouts: embeddings, RMSNorm, rotary q/k/v
  projections with grouped-query attention, gated MLP; q/k/v and gate/up fused in a small model), so any
  checkpoint of these architectures works, ours or a pretrained Qwen2.5;
* lays each state's candidates out as a prefix tree: candidates sharing a prefix ("select new_plan = ...",
  "send Hello ...") share its nodes; a node attends to the prompt and to its own ancestors, at the position it
  would have after the prompt, so each candidate is scored exactly as if alone;
* packs several states in one row with no padding (projections and MLP run on all tokens at once, attention
  per state);
* with pruning (the policy's default), runs in stages (docs/decisions/0012-staged-candidate-scoring.md): the
  prompts with the tree's shallow nodes first, keeping their keys and values, then deeper nodes a few depths at
  a time, only for candidates still within ``prune_logprob`` of the best complete one; the vocabulary head (the
  most expensive part) runs once per node that is run, not once per candidate token.

Scores equal the reference path's within float rounding, and the kept candidates are the same
(``kept_candidates``; tests/policy/test_fast_scoring.py).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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
TREE_CACHE_SIZE = 4096  # candidate trees kept (tree_for)
FUSE_MAX_PARAMETERS = 64_000_000  # decoder layers up to this size get fused projections (see _LayerWeights)
# Staged scoring (``PackedDecoder.score`` with pruning): tree depths run per stage, after the prompts' own pass.
# Chosen on the default policy's test states (docs/decisions/0012-staged-candidate-scoring.md).
STAGE_DEPTHS = (2, 5, 1 << 30)
# Rotary types whose module changes its frequencies with the sequence length: no table of cos/sin by position.
STATEFUL_ROPE_TYPES = frozenset({"dynamic", "longrope"})
ROPE_TABLE_MIN = 1024  # positions in the first table (it doubles when a longer sequence comes)


@dataclass(frozen=True)
class ScoredState:
    """The candidates that survived pruning (indices into the state's candidate list, in order) and their
    sequence log-probabilities."""

    kept: list[int]
    logprobs: list[float]


def kept_candidates(firsts: Sequence[float], totals: Sequence[float], prune_logprob: float | None) -> list[int]:
    """The pruning rule, one for every scoring path: a candidate is kept when its first token's log-probability is
    within ``prune_logprob`` of the state's best first token *and* its sequence log-probability is within
    ``prune_logprob`` of the best among those (None keeps every candidate). A dropped candidate is at most
    ``exp(-prune_logprob)`` as likely as the best one."""
    if prune_logprob is None or not firsts:
        return list(range(len(firsts)))
    first_floor = max(firsts) - prune_logprob
    passed = [c for c, lp in enumerate(firsts) if lp >= first_floor]
    floor = max(totals[c] for c in passed) - prune_logprob
    return [c for c in passed if totals[c] >= floor]


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
    and itself, the tree nodes it attends to besides the prompt. Trees are shared between states (``tree_for``):
    nothing changes one once built."""

    tokens: list[int]
    depths: list[int]  # a node's position is the prompt's length plus its depth
    ancestors: list[list[int]]
    steps: list[list[tuple[int, int]]]  # per candidate: (node predicting it, token) for every token after the first
    firsts: list[int]  # per candidate: its first token (predicted at the prompt's last position)


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


def build_tree(candidates: Sequence[Sequence[int]]) -> _Tree:
    tree = _Tree(tokens=[], depths=[], ancestors=[], steps=[], firsts=[cand[0] for cand in candidates])
    children: dict[tuple[int, int], int] = {}  # (parent node, -1 for the prompt; token) -> node
    for cand in candidates:
        parent, steps = -1, []
        for j in range(len(cand) - 1):  # the last token is only predicted, never read
            node = children.get((parent, cand[j]))
            if node is None:
                node = len(tree.tokens)
                children[(parent, cand[j])] = node
                tree.tokens.append(cand[j])
                tree.depths.append(j)
                tree.ancestors.append([*(tree.ancestors[parent] if parent >= 0 else []), node])
            steps.append((node, cand[j + 1]))
            parent = node
        tree.steps.append(steps)
    return tree


@functools.lru_cache(maxsize=TREE_CACHE_SIZE)
def _cached_tree(candidates: tuple[tuple[int, ...], ...]) -> _Tree:
    return build_tree(candidates)


def tree_for(candidates: Sequence[Sequence[int]]) -> _Tree:
    """``build_tree``, memoised: the same screens offer the same candidates (on the sandbox's test states, 168
    distinct candidate lists in 1,996 states), and building a tree costs more than looking one up."""
    return _cached_tree(tuple(tuple(c) for c in candidates))


_CAUSAL = np.zeros((0, 0), dtype=np.float32)


def _causal_block(n: int) -> np.ndarray:
    """An n x n additive causal mask (a view of a cached, grown-on-demand array: callers copy from it)."""
    global _CAUSAL
    if _CAUSAL.shape[0] < n:
        size = max(n, 2 * _CAUSAL.shape[0], 256)
        _CAUSAL = np.triu(np.full((size, size), -np.inf, dtype=np.float32), k=1)
    return _CAUSAL[:n, :n]


Projection = list[tuple[torch.Tensor, torch.Tensor | None]]  # (weight, bias) pairs whose outputs are concatenated


def _project(x: torch.Tensor, parts: Projection) -> torch.Tensor:
    if len(parts) == 1:
        return F.linear(x, *parts[0])
    return torch.cat([F.linear(x, weight, bias) for weight, bias in parts], dim=-1)


def _linear(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    assert isinstance(module, torch.nn.Linear)
    return module.weight, module.bias


def _fused(parts: Projection) -> Projection:
    """One (weight, bias) pair for projections that share an input: one matrix product instead of several."""
    weight = torch.cat([w for w, _ in parts])
    if all(b is None for _, b in parts):
        return [(weight, None)]
    biases = [b if b is not None else w.new_zeros(w.shape[0]) for w, b in parts]
    return [(weight, torch.cat(biases))]


@dataclass
class _LayerWeights:
    """One decoder layer as the lean forward reads it. In a small model q/k/v and gate/up are fused into one
    matrix each (a copy of those weights): on a CPU each matrix product of a few hundred rows costs mostly its
    call; a large model keeps them apart (its products are arithmetic, and a copy would be gigabytes)."""

    norm_shape: tuple[int]
    input_norm: torch.Tensor
    input_eps: float
    post_norm: torch.Tensor
    post_eps: float
    qkv: Projection
    out: Projection
    gate_up: Projection
    down: Projection
    act: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def of(cls, layer: Any, fuse: bool) -> _LayerWeights:  # a LlamaDecoderLayer or Qwen2DecoderLayer
        attn, mlp = layer.self_attn, layer.mlp
        qkv = [_linear(attn.q_proj), _linear(attn.k_proj), _linear(attn.v_proj)]
        gate_up = [_linear(mlp.gate_proj), _linear(mlp.up_proj)]
        weight = layer.input_layernorm.weight
        return cls(
            norm_shape=(int(weight.shape[0]),),
            input_norm=weight,
            input_eps=float(layer.input_layernorm.variance_epsilon),
            post_norm=layer.post_attention_layernorm.weight,
            post_eps=float(layer.post_attention_layernorm.variance_epsilon),
            qkv=_fused(qkv) if fuse else qkv,
            out=[_linear(attn.o_proj)],
            gate_up=_fused(gate_up) if fuse else gate_up,
            down=[_linear(mlp.down_proj)],
            act=mlp.act_fn,
        )


def _versions(parameters: Sequence[torch.Tensor]) -> tuple[int, ...]:
    """The parameters' in-place modification counters: they move when the weights are trained or loaded."""
    return tuple(p._version for p in parameters)


@dataclass
class _Segment:
    """One state's span of the packed row and its additive attention mask (None: plain causal)."""

    start: int
    length: int
    mask: np.ndarray | None


class PackedDecoder:
    """A lean, inference-only forward over packed sequences with a Llama/Qwen2 model's own weights.
    ``padded_attention`` applies to the one-pass forward (``forward``, ``last_hidden``, one-pass scoring); staged
    scoring attends state by state. ``staged``: score with pruning in stages (None: on a CPU, where the pruned
    nodes' arithmetic is the cost; on a GPU one pass, as measured in decision 0010, with the rule applied to its
    result)."""

    def __init__(
        self, model: PreTrainedModel, padded_attention: bool | None = None, staged: bool | None = None
    ) -> None:
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
        # a table of cos/sin by position, unless the rotary module changes with the sequence length
        self.rope_table: tuple[torch.Tensor, torch.Tensor] | None = None
        self.rope_tabled = getattr(self.rotary, "rope_type", "default") not in STATEFUL_ROPE_TYPES
        attention = self.layers[0].self_attn
        self.head_dim = int(attention.head_dim)
        self.scaling = float(attention.scaling)
        self.norm_shape = (int(self.norm.weight.shape[0]),)
        self.norm_eps = float(self.norm.variance_epsilon)
        self.heads = int(model.config.num_attention_heads)
        self.kv_heads = int(model.config.num_key_value_heads)
        self.device = head.weight.device
        self.dtype = head.weight.dtype
        self.padded_attention = padded_attention  # None: padded on a GPU, state by state on a CPU
        self.staged = self.device.type == "cpu" if staged is None else staged
        self.head_chunk_elements = HEAD_CHUNK_ELEMENTS if self.device.type == "cpu" else HEAD_CHUNK_ELEMENTS_GPU
        fuse = sum(p.numel() for layer in self.layers for p in layer.parameters()) <= FUSE_MAX_PARAMETERS
        self.weights = [_LayerWeights.of(layer, fuse) for layer in self.layers]
        # the parameters, listed once: checking their versions on every call must not walk the module tree
        self.parameters = list(model.parameters())
        self.versions = _versions(self.parameters)

    # ---- the forward ---------------------------------------------------------------------------------------

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def forward(self, tokens: list[int], positions: list[int], segments: Sequence[_Segment]) -> torch.Tensor:
        """Final hidden states (after the decoder's norm) of a packed row, shape (tokens, hidden). Segments must
        be contiguous and in order, covering the row."""
        attend = self._padded_attention(segments) if self._pad(segments) else self._segment_attention(segments)
        return self._run(tokens, positions, lambda _, q, k, v: attend(q, k, v))

    def _run(
        self,
        tokens: list[int],
        positions: list[int],
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The decoder over a packed row, ``attend(layer index, q, k, v)`` (shapes (1, heads, n, head_dim)) doing
        the attention; the final hidden states after the norm, (n, hidden)."""
        n, heads, kv_heads = len(tokens), self.heads, self.kv_heads
        hidden = F.embedding(torch.tensor(tokens, dtype=torch.long, device=self.device), self.embed.weight)
        cos, sin = self._rotary(hidden, positions)
        for index, w in enumerate(self.weights):
            x = F.rms_norm(hidden, w.norm_shape, w.input_norm, w.input_eps)
            qkv = _project(x, w.qkv).view(n, heads + 2 * kv_heads, self.head_dim)
            qk = self._rope(qkv[:, : heads + kv_heads], cos, sin)
            q = qk[:, :heads].transpose(0, 1).unsqueeze(0)
            k = qk[:, heads:].transpose(0, 1).unsqueeze(0)
            v = qkv[:, heads + kv_heads :].transpose(0, 1).unsqueeze(0)
            attended = attend(index, q, k, v)
            hidden = hidden + _project(attended[0].transpose(0, 1).reshape(n, -1), w.out)
            x = F.rms_norm(hidden, w.norm_shape, w.post_norm, w.post_eps)
            gate, up = _project(x, w.gate_up).chunk(2, dim=-1)
            hidden = hidden + _project(w.act(gate) * up, w.down)
        return F.rms_norm(hidden, self.norm_shape, self.norm.weight, self.norm_eps)

    def _rotary(self, hidden: torch.Tensor, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at each position, (n, 1, head_dim) to broadcast over heads: rows of a table built once by
        the model's own rotary module (each position's values do not depend on the others), or the module's
        call where its frequencies change with the sequence length."""
        index = torch.tensor(positions, dtype=torch.long, device=self.device)
        if not self.rope_tabled:
            cos, sin = self.rotary(hidden, index[None])
            return cos[0].unsqueeze(1), sin[0].unsqueeze(1)
        table = self.rope_table
        if table is None or table[0].shape[0] <= max(positions):
            size = max(max(positions) + 1, ROPE_TABLE_MIN, 2 * (0 if table is None else table[0].shape[0]))
            cos, sin = self.rotary(hidden, torch.arange(size, device=self.device)[None])
            table = self.rope_table = (cos[0].unsqueeze(1), sin[0].unsqueeze(1))  # one assignment: thread-safe
        return table[0][index], table[1][index]

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
        """Sequence log-probabilities of each state's candidates that ``kept_candidates`` keeps (None: all).

        Without pruning (or ``staged`` off), prompt and tree run in one pass. With it, in stages
        (``STAGE_DEPTHS``): the prompts first (their keys and values kept), then the tree a few depths at a time
        against them, only the nodes of candidates still in the race: a candidate whose log-probability so far is
        more than ``prune_logprob`` below the best complete one can only fall further, so neither its deeper nodes
        nor their head rows are run."""
        if len(prompts) != len(candidates):
            raise ValueError("one candidate list per prompt")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        if any(len(c) == 0 for cands in candidates for c in cands):
            raise ValueError("empty candidate")
        live = [b for b, cands in enumerate(candidates) if cands]
        out = [ScoredState([], []) for _ in prompts]
        if not live:
            return out
        trees = {b: tree_for(candidates[b]) for b in live}
        if prune_logprob is not None and self.staged:
            scored = self._score_in_stages(prompts, live, trees, prune_logprob)
        else:
            scored = self._score_in_one_pass(prompts, candidates, live, trees, prune_logprob)
        for b, state in zip(live, scored, strict=True):
            out[b] = state
        return out

    def _score_in_one_pass(
        self,
        prompts: Sequence[Sequence[int]],
        candidates: Sequence[Sequence[Sequence[int]]],
        live: list[int],
        trees: dict[int, _Tree],
        prune_logprob: float | None,
    ) -> list[ScoredState]:
        """Every candidate in full: prompts and trees packed in one pass, the head at every tree node; then the
        pruning rule on the result."""
        tokens: list[int] = []
        positions: list[int] = []
        segments: list[_Segment] = []
        for b in live:
            tree = trees[b]
            segments.append(
                _Segment(len(tokens), len(prompts[b]) + len(tree.tokens), self._tree_mask(len(prompts[b]), tree))
            )
            tokens += [*prompts[b], *tree.tokens]
            positions += [*range(len(prompts[b])), *(len(prompts[b]) + d for d in tree.depths)]
        hidden = self.forward(tokens, positions, segments)
        rows, wanted = [], []
        for b, s in zip(live, segments, strict=True):
            last, base = s.start + len(prompts[b]) - 1, s.start + len(prompts[b])
            for c, cand in enumerate(candidates[b]):
                rows.append(last)
                wanted.append(cand[0])
                for node, token in trees[b].steps[c]:
                    rows.append(base + node)
                    wanted.append(token)
        logprobs = self.token_logprobs(hidden, rows, wanted)
        out, at = [], 0
        for b in live:
            firsts, totals = [], []
            for cand in candidates[b]:
                firsts.append(logprobs[at])
                totals.append(sum(logprobs[at : at + len(cand)]))
                at += len(cand)
            kept = kept_candidates(firsts, totals, prune_logprob)
            out.append(ScoredState(kept, [totals[c] for c in kept]))
        return out

    def _score_in_stages(
        self, prompts: Sequence[Sequence[int]], live: list[int], trees: dict[int, _Tree], prune_logprob: float
    ) -> list[ScoredState]:
        races = [
            _Race(prompts[b], trees[b], self._cache(len(prompts[b]) + len(trees[b].tokens)), prune_logprob)
            for b in live
        ]
        low = 0
        for high in STAGE_DEPTHS:
            # the first stage runs the prompts too, with the shallow nodes of every candidate: the first-token
            # rule needs the prompt's output, and those nodes cost less than another pass
            running = [race for race in races if race.running]
            if not running:
                break
            spans, tokens, positions = [], [], []
            for race in running:
                nodes = race.nodes_between(low, high)
                span = race.stage_tokens(nodes)
                spans.append((race.cache, len(span[0]), race.mask_for(nodes)))
                tokens += span[0]
                positions += span[1]
            hidden = self._extend(tokens, positions, spans)
            rows, wanted, ends = [], [], []
            at = 0
            for race, (_, count, _) in zip(running, spans, strict=True):
                for row, token in race.wanted(low, high):
                    rows.append(at + row)
                    wanted.append(token)
                ends.append(len(rows))
                at += count
            scores = self.token_logprobs(hidden, rows, wanted)
            for race, start, end in zip(running, [0, *ends], ends, strict=False):
                race.advance(low, high, scores[start:end])
            low = high
        return [race.result() for race in races]

    def _cache(self, slots: int) -> _Cache:
        shape = (self.kv_heads, slots, self.head_dim)
        return _Cache(
            keys=[torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
            values=[torch.empty(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
        )

    def _extend(
        self, tokens: list[int], positions: list[int], spans: Sequence[tuple[_Cache, int, np.ndarray | None]]
    ) -> torch.Tensor:
        """Final hidden states (after the norm) of new tokens, packed state by state, each state's ``count`` tokens
        attending to its cache's filled slots and to one another as its mask says (rows: the new tokens; columns:
        the cache's filled slots, then the new tokens; None: causal over an empty cache). Their keys and values
        are written to the cache's next slots."""
        if any(mask is None and cache.used for cache, _, mask in spans):
            raise ValueError("a causal span needs an empty cache")
        masks = [
            None if m is None else torch.from_numpy(m).to(device=self.device, dtype=self.dtype) for _, _, m in spans
        ]
        gqa = self.kv_heads != self.heads

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            parts, at = [], 0
            for (cache, count, _), mask in zip(spans, masks, strict=True):
                used = cache.used
                keys, values = cache.keys[index], cache.values[index]
                keys[:, used : used + count] = k[0, :, at : at + count]
                values[:, used : used + count] = v[0, :, at : at + count]
                parts.append(
                    F.scaled_dot_product_attention(
                        q[:, :, at : at + count],
                        keys[None, :, : used + count],
                        values[None, :, : used + count],
                        attn_mask=mask,
                        is_causal=mask is None,
                        scale=self.scaling,
                        enable_gqa=gqa,
                    )
                )
                at += count
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

        hidden = self._run(tokens, positions, attend)
        for cache, count, _ in spans:
            cache.used += count
        return hidden


@dataclass
class _Cache:
    """One state's keys and values per layer, (kv_heads, slots, head_dim): the prompt's, then tree nodes' in the
    order they were run."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    used: int = 0


class _Race:
    """One state's candidates during staged scoring: those still running, their log-probabilities so far, and
    the tree nodes run so far (their cache slots). Before the first stage every candidate runs and none is
    scored; the first stage's scores bring the first-token rule, every stage's the sequence rule."""

    def __init__(self, prompt: Sequence[int], tree: _Tree, cache: _Cache, prune_logprob: float) -> None:
        self.prompt = prompt
        self.tree = tree
        self.cache = cache
        self.prune_logprob = prune_logprob
        self.slot = np.full(len(tree.tokens), -1, dtype=np.int64)  # node -> cache slot, -1: not run
        self.row_of: dict[int, int] = {}  # node -> row in the current stage's output
        self.totals = [0.0] * len(tree.steps)
        self.running = list(range(len(tree.steps)))
        self.complete: list[int] = []
        self.scored = False  # False until the first stage: the prompt has not run yet

    def nodes_between(self, low: int, high: int) -> list[int]:
        """The nodes running candidates need at depths [low, high), in tree order (ancestors first); assigns their
        cache slots and their rows in this stage's output (after the prompt's, in the first stage)."""
        nodes = sorted({node for c in self.running for node, _ in self.tree.steps[c][low:high]})
        first = self.cache.used if self.scored else len(self.prompt)
        self.slot[nodes] = np.arange(first, first + len(nodes))
        offset = 0 if self.scored else len(self.prompt)
        self.row_of = {node: offset + i for i, node in enumerate(nodes)}
        return nodes

    def stage_tokens(self, nodes: list[int]) -> tuple[list[int], list[int]]:
        """(tokens, positions) this stage runs: the nodes, after the prompt in the first stage."""
        tokens = [self.tree.tokens[n] for n in nodes]
        positions = [len(self.prompt) + self.tree.depths[n] for n in nodes]
        if self.scored:
            return tokens, positions
        return [*self.prompt, *tokens], [*range(len(self.prompt)), *positions]

    def mask_for(self, nodes: list[int]) -> np.ndarray:
        """Additive mask of this stage's rows over the cache's slots then theirs: a node sees the prompt and its
        ancestors; in the first stage the prompt's rows come first, causal."""
        p = len(self.prompt)
        head = 0 if self.scored else p  # rows of the prompt in this stage
        width = (self.cache.used if self.scored else 0) + head + len(nodes)
        mask = np.full((head + len(nodes), width), -np.inf, dtype=np.float32)
        mask[:head, :head] = _causal_block(head)
        mask[head:, :p] = 0.0
        ancestors = [self.tree.ancestors[n] for n in nodes]
        depth = np.fromiter((len(a) for a in ancestors), dtype=np.int64, count=len(ancestors))
        rows = head + np.repeat(np.arange(len(nodes)), depth)
        cols = self.slot[np.fromiter((a for anc in ancestors for a in anc), dtype=np.int64, count=int(depth.sum()))]
        mask[rows, cols] = 0.0
        return mask

    def wanted(self, low: int, high: int) -> list[tuple[int, int]]:
        """(row, token) of the log-probabilities this stage adds, candidate by candidate in ``running`` order: each
        running candidate's tokens predicted at its nodes of depths [low, high), after its first token (predicted
        at the prompt's last row) in the first stage."""
        out = []
        for c in self.running:
            if not self.scored:
                out.append((len(self.prompt) - 1, self.tree.firsts[c]))
            out += [(self.row_of[node], token) for node, token in self.tree.steps[c][low:high]]
        return out

    def advance(self, low: int, high: int, scores: list[float]) -> None:
        """Add a stage's ``scores`` (in ``wanted``'s order); apply the first-token rule after the first stage; move
        finished candidates to ``complete``; drop those already more than ``prune_logprob`` below the best
        complete one: a log-probability only falls as tokens are added."""
        at, firsts = 0, {}
        for c in self.running:
            n = len(self.tree.steps[c][low:high]) + (0 if self.scored else 1)
            if not self.scored:
                firsts[c] = scores[at]
            self.totals[c] += sum(scores[at : at + n])
            at += n
        if not self.scored:
            floor = max(firsts.values()) - self.prune_logprob
            self.running = [c for c in self.running if firsts[c] >= floor]
            self.scored = True
        self.complete += [c for c in self.running if len(self.tree.steps[c]) <= high]
        self.running = [c for c in self.running if len(self.tree.steps[c]) > high]
        if self.complete:
            floor = max(self.totals[c] for c in self.complete) - self.prune_logprob
            self.running = [c for c in self.running if self.totals[c] >= floor]

    def result(self) -> ScoredState:
        """The kept candidates: ``kept_candidates``'s rule, from the complete ones (every candidate dropped on the
        way is below its floor too)."""
        done = sorted(self.complete)
        floor = max(self.totals[c] for c in done) - self.prune_logprob
        kept = [c for c in done if self.totals[c] >= floor]
        return ScoredState(kept, [self.totals[c] for c in kept])


_DECODERS: weakref.WeakKeyDictionary[PreTrainedModel, dict[tuple[bool | None, bool | None], PackedDecoder]] = (
    weakref.WeakKeyDictionary()
)
_DECODERS_LOCK = threading.Lock()


def decoder_for(
    model: PreTrainedModel, padded_attention: bool | None = None, staged: bool | None = None
) -> PackedDecoder:
    """The model's ``PackedDecoder``, built once and rebuilt when the model's weights have changed since (its
    fused projections are copies)."""
    with _DECODERS_LOCK:
        built = _DECODERS.setdefault(model, {})
        decoder = built.get((padded_attention, staged))
        if decoder is None or decoder.versions != _versions(decoder.parameters):
            decoder = built[(padded_attention, staged)] = PackedDecoder(model, padded_attention, staged)
        return decoder


def score_states(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    prune_logprob: float | None = None,
    *,
    padded_attention: bool | None = None,
    staged: bool | None = None,
) -> list[ScoredState]:
    """The fast path for a supported model (``supports``): see ``PackedDecoder.score``."""
    return decoder_for(model, padded_attention, staged).score(prompts, candidates, prune_logprob)


def last_hidden_states(
    model: PreTrainedModel, seqs: Sequence[Sequence[int]], *, padded_attention: bool | None = None
) -> torch.Tensor:
    """The fast path's final hidden state at each sequence's last token (after the decoder's norm)."""
    return decoder_for(model, padded_attention).last_hidden(seqs)
