"""The fast scoring path equals the reference path (policy.scoring) within 1e-4: both architectures, one state and
packed batches, with and without pruning; LMPolicy gives the same proposals either way; unsupported layouts
fall back to the reference."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from importers.jsonl import read_traces
from policy.fast_scoring import (
    ROPE_TABLE_MIN,
    PackedDecoder,
    build_tree,
    decoder_for,
    kept_candidates,
    last_hidden_states,
    score_states,
    supports,
)
from policy.model import Architecture, ModelConfig, build_model, load_model
from policy.policy import LMPolicy
from policy.scoring import next_token_logprobs, score_candidates
from policy.train import TrainConfig
from sandbox.generate import generate
from sandbox.scenario import scenario_by_name
from schemas.trace import Trace

TOLERANCE = 1e-4
VOCAB = 60


def _model(architecture: Architecture, kv_heads: int = 2) -> PreTrainedModel:
    torch.manual_seed(1)
    config = ModelConfig(
        architecture=architecture, hidden_size=32, layers=2, heads=4, kv_heads=kv_heads, intermediate_size=64
    )
    return _peaked(build_model(config, vocab_size=VOCAB, pad_id=0, bos_id=1, eos_id=2).eval())


def _peaked(model: PreTrainedModel) -> PreTrainedModel:
    """A random init predicts nearly uniform tokens; larger head weights give distributions the pruning rule
    can cut (and larger log-probabilities to compare)."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model


def _untied_qwen2_with_bias() -> PreTrainedModel:
    """The shape of a pretrained Qwen2.5 checkpoint: q/k/v biases, an untied head (random weights)."""
    torch.manual_seed(2)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # biases start at zero: make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return _peaked(model)


def _inputs(seed: int, states: int) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Random prompts ending with the action marker and candidate lists that share prefixes (a small candidate
    alphabet), hold duplicates and one-token candidates, and sometimes are empty."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(rng.randrange(0, 40))] + [1] for _ in range(states)]
    candidates = []
    for _ in range(states):
        cands = [[rng.randrange(3, 9) for _ in range(rng.randrange(0, 6))] + [2] for _ in range(rng.randrange(0, 10))]
        if cands and rng.random() < 0.5:
            cands.append(list(cands[0]))  # a duplicate
        candidates.append(cands)
    return prompts, candidates


def _reference(
    model: PreTrainedModel, prompts: list[list[int]], candidates: list[list[list[int]]], prune: float | None
) -> list[tuple[list[int], list[float]]]:
    """The reference path: every candidate scored in full by ``policy.scoring``, first tokens from a pass of their
    own, then the pruning rule applied to the result."""
    first = next_token_logprobs(model, prompts)
    live = [b for b, cands in enumerate(candidates) if cands]
    scored = score_candidates(model, [prompts[b] for b in live], [candidates[b] for b in live])
    scores = dict(zip(live, scored, strict=True))
    out: list[tuple[list[int], list[float]]] = []
    for b, cands in enumerate(candidates):
        totals = scores.get(b, [])
        kept = kept_candidates([float(first[b, c[0]]) for c in cands], totals, prune)
        out.append((kept, [totals[c] for c in kept]))
    return out


def _assert_equal(
    fast: list[tuple[list[int], list[float]]], reference: list[tuple[list[int], list[float]]], what: str
) -> None:
    assert len(fast) == len(reference), what
    for b, ((kept_f, lp_f), (kept_r, lp_r)) in enumerate(zip(fast, reference, strict=True)):
        assert kept_f == kept_r, (what, b)
        assert lp_f == pytest.approx(lp_r, abs=TOLERANCE), (what, b)


MODELS = {
    "llama": lambda: _model("llama"),
    "llama-mha": lambda: _model("llama", kv_heads=4),
    "qwen2": lambda: _model("qwen2"),
    "qwen2-pretrained-shape": _untied_qwen2_with_bias,
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("prune", [None, 1.5])
@pytest.mark.parametrize(
    ("padded", "staged"), [(False, True), (True, False)], ids=["state-by-state+staged", "padded+one-pass"]
)
def test_packed_batch_equals_reference(name: str, prune: float | None, padded: bool, staged: bool) -> None:
    """The CPU default (attention state by state, staged scoring) and the GPU default (padded attention, one
    pass with the pruning rule applied to its result) of a packed batch."""
    model = MODELS[name]()
    assert supports(model)
    prompts, candidates = _inputs(seed=len(name), states=7)
    assert any(not c for c in candidates) and any(c for c in candidates)
    scored = score_states(model, prompts, candidates, prune, padded_attention=padded, staged=staged)
    fast = [(s.kept, s.logprobs) for s in scored]
    _assert_equal(fast, _reference(model, prompts, candidates, prune), f"{name} packed")
    if prune is not None:  # the rule must have pruned something, or this case tests nothing beyond the other
        assert sum(len(k) for k, _ in fast) < sum(len(c) for c in candidates)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_state_at_a_time_equals_reference(name: str) -> None:
    model = MODELS[name]()
    prompts, candidates = _inputs(seed=11, states=5)
    for prompt, cands in zip(prompts, candidates, strict=True):
        fast = [(s.kept, s.logprobs) for s in score_states(model, [prompt], [cands], 3.0)]
        _assert_equal(fast, _reference(model, [prompt], [cands], 3.0), f"{name} single")


def test_separate_passes_agree_with_the_fast_path() -> None:
    """Independent of the reference packing: each candidate in a plain forward pass of its own."""
    model = _model("qwen2")
    prompt, cands = [5, 6, 7, 8, 1], [[10, 11, 2], [10, 13, 14, 2], [12, 2], [2]]
    fast = score_states(model, [prompt], [cands])[0]
    for c, cand in enumerate(cands):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + cand])).logits[0].log_softmax(-1)
        alone = sum(float(logits[len(prompt) - 1 + j, token]) for j, token in enumerate(cand))
        assert fast.logprobs[c] == pytest.approx(alone, abs=TOLERANCE)


def test_prefix_tree_shares_nodes() -> None:
    tree = build_tree([[7, 8, 9, 2], [7, 8, 5, 2], [7, 3, 2], [6, 2]])
    # nodes: 7, 7-8, 7-8-9, 7-8-5, 7-3, 6 (the last token of a candidate is never read)
    assert tree.tokens == [7, 8, 9, 5, 3, 6]
    assert tree.depths == [0, 1, 2, 2, 1, 0]
    assert tree.ancestors == [[0], [0, 1], [0, 1, 2], [0, 1, 3], [0, 4], [5]]
    assert tree.steps[1] == [(0, 8), (1, 5), (3, 2)]


def test_last_hidden_equals_the_transformers_forward() -> None:
    model = _untied_qwen2_with_bias()
    seqs = [[5, 6, 7], [9], [3, 4, 5, 6, 7, 8, 9, 10]]
    packed = last_hidden_states(model, seqs)
    torch.testing.assert_close(last_hidden_states(model, seqs, padded_attention=True), packed, atol=1e-5, rtol=1e-5)
    for i, seq in enumerate(seqs):
        with torch.no_grad():
            alone = model.get_decoder()(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
        torch.testing.assert_close(packed[i], alone, atol=1e-5, rtol=1e-5)


def test_bad_input_and_unsupported_layouts() -> None:
    model = _model("llama")
    assert score_states(model, [], []) == []
    with pytest.raises(ValueError, match="empty candidate"):
        score_states(model, [[3, 1]], [[[]]])
    with pytest.raises(ValueError, match="empty prompt"):
        score_states(model, [[]], [[[2]]])
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2)).eval()
    assert not supports(gpt2)
    with pytest.raises(TypeError):
        PackedDecoder(gpt2)
    sliding = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=0,
        )
    )
    assert not supports(sliding)


# ---- through LMPolicy ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> list[Trace]:
    path: Path = tmp_path_factory.mktemp("traces") / "t.jsonl"
    generate(16, 5, path, scenario_by_name("default"), progress=False)
    return list(read_traces(path))


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_policy_proposals_are_the_same_on_both_paths(architecture: Architecture, traces: list[Trace]) -> None:
    tiny = ModelConfig(architecture=architecture, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
    quick = TrainConfig(epochs=1, batch_size=16, eval_every=20, warmup_steps=5, threads=1)
    policy = LMPolicy(model=tiny, training=quick, vocab_size=500, prune_logprob=2.0, progress=False).fit(traces[:12])
    states = [step.state for trace in traces[12:] for step in trace.steps]
    fast = policy.propose_batch(states, k=4)
    single = [policy.propose(state, k=4) for state in states[:5]]
    policy.fast_scoring = False
    reference = policy.propose_batch(states, k=4)
    for a, b in zip([*fast, *single], [*reference, *reference[:5]], strict=True):
        assert a is not None and b is not None
        assert a.action == b.action
        assert [x.action for x in a.alternatives] == [x.action for x in b.alternatives]
        assert a.features.logprob == pytest.approx(b.features.logprob, abs=TOLERANCE)
        assert a.features.probability == pytest.approx(b.features.probability, abs=TOLERANCE)


def test_vocabulary_head_in_chunks_equals_one_call() -> None:
    model = _model("llama")
    prompts, candidates = _inputs(seed=4, states=5)
    decoder = PackedDecoder(model)
    whole = decoder.score(prompts, candidates, None)
    decoder.head_chunk_elements = VOCAB * 3  # three rows of logits per head call
    chunked = decoder.score(prompts, candidates, None)
    # The chunks sum the log-sum-exp in another order: a few fp32 ulps apart (1.9e-6 on a 26-nat log-probability
    # on an AMD EPYC, below 1e-6 on the Intel machines before), far inside the fast path's 1e-4.
    for a, b in zip(whole, chunked, strict=True):
        assert a.kept == b.kept and a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


# ---- the pruning rule and staged scoring ------------------------------------------------------------------------


def test_kept_candidates_applies_both_parts_of_the_rule() -> None:
    firsts = [-0.1, -0.2, -5.0, -0.3]
    totals = [-3.0, -0.5, -5.5, -4.0]
    # first-token rule at 2.0 drops candidate 2; the sequence rule (best kept -0.5) then drops 0 and 3
    assert kept_candidates(firsts, totals, 2.0) == [1]
    assert kept_candidates(firsts, totals, 4.0) == [0, 1, 3]
    assert kept_candidates(firsts, totals, None) == [0, 1, 2, 3]
    assert kept_candidates([], [], 2.0) == []


def test_staged_scoring_skips_the_nodes_of_hopeless_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long candidates that share their first tokens with a likely short one: once the short one is complete, the
    long ones far below it stop running, so fewer tree nodes run than the tree has; the result is still the
    reference's."""
    model = _model("llama")
    rng = random.Random(5)
    prompt = [rng.randrange(3, VOCAB) for _ in range(12)] + [1]
    stem = [4, 5]
    cands = [[*stem, 2]] + [[*stem, *(rng.randrange(3, VOCAB) for _ in range(8)), 2] for _ in range(12)]
    decoder = PackedDecoder(model)
    ran: list[int] = []
    extend = decoder._extend

    def counting(tokens: list[int], positions: list[int], spans: object) -> torch.Tensor:
        ran.append(len(tokens))
        return extend(tokens, positions, spans)  # type: ignore[arg-type]

    monkeypatch.setattr(decoder, "_extend", counting)
    scored = decoder.score([prompt], [cands], 3.0)[0]
    _assert_equal([(scored.kept, scored.logprobs)], _reference(model, [prompt], [cands], 3.0), "staged")
    tree = build_tree(cands)
    assert len(ran) >= 2  # the prompt's stage and at least one more
    assert sum(ran) < len(prompt) + len(tree.tokens)
    assert len(scored.kept) < len(cands)


def test_the_decoder_is_rebuilt_when_the_weights_change() -> None:
    model = _model("llama")
    prompts, candidates = _inputs(seed=3, states=3)
    before = score_states(model, prompts, candidates, None)
    assert decoder_for(model) is decoder_for(model)
    with torch.no_grad():
        model.get_decoder().layers[0].self_attn.q_proj.weight.mul_(1.5)  # the fused copy would be stale
    after = score_states(model, prompts, candidates, None)
    fresh = PackedDecoder(model).score(prompts, candidates, None)
    assert [s.logprobs for s in after] == [s.logprobs for s in fresh]
    assert [s.logprobs for s in after] != [s.logprobs for s in before]


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_rotary_table_rows_equal_the_models_rotary_module(architecture: Architecture) -> None:
    model = _model(architecture)
    decoder = PackedDecoder(model)
    rotary = model.get_decoder().rotary_emb
    hidden = torch.zeros(1, model.config.hidden_size)
    for positions in ([0, 1, 2], [7, 3, 3, 0], [ROPE_TABLE_MIN - 1, ROPE_TABLE_MIN, 3 * ROPE_TABLE_MIN + 5]):
        cos, sin = decoder._rotary(hidden, positions)  # the last list grows the table past its first size
        want_cos, want_sin = rotary(hidden, torch.tensor([positions]))
        assert torch.equal(cos[:, 0], want_cos[0]) and torch.equal(sin[:, 0], want_sin[0])
    assert decoder.rope_table is not None and decoder.rope_table[0].shape[0] > 3 * ROPE_TABLE_MIN + 5


def test_loaded_weights_are_owned_and_stay_tied(tmp_path: Path) -> None:
    model = _model("llama")
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    head, embeddings = loaded.get_output_embeddings().weight, loaded.get_input_embeddings().weight
    assert head is embeddings  # tied: one parameter, one copy
    for parameter in loaded.parameters():  # safetensors leaves them at the file's offsets (8 bytes aligned)
        assert parameter.is_contiguous()
        assert parameter.data_ptr() % 64 == 0
