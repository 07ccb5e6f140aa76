"""Tiny saved models for tests: a "pretrained" checkpoint for the paper's path (a pretrained Qwen2 + LoRA) without a
download, and a tiny policy trained on a few sandbox cases and saved."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from importers.jsonl import read_traces
from policy.model import Architecture, ModelConfig
from policy.policy import LMPolicy
from policy.train import TrainConfig
from sandbox.generate import generate
from sandbox.scenario import scenario_by_name
from schemas.state import UIState


def tiny_pretrained_checkpoint(texts: list[str], directory: Path) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised one-layer Qwen2 and its own byte-level BPE tokenizer (trained on ``texts``, so it
    knows none of the policy's special tokens, as a real pretrained one would not), saved to ``directory``."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def tiny_saved_policy(root: Path, seed: int, architecture: Architecture = "qwen2") -> tuple[Path, list[UIState]]:
    """A one-layer policy trained for one epoch on 9 of 12 default-scenario cases (``seed``), saved under
    ``root/policy``; returns the directory and the states of the 3 other cases."""
    generate(12, seed, root / "t.jsonl", scenario_by_name("default"), progress=False)
    traces = read_traces(root / "t.jsonl")
    tiny = ModelConfig(architecture=architecture, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
    quick = TrainConfig(epochs=1, batch_size=16, eval_every=20, warmup_steps=5, threads=1)
    LMPolicy(model=tiny, training=quick, vocab_size=500, progress=False).fit(traces[:9]).save(root / "policy")
    return root / "policy", [step.state for trace in traces[9:] for step in trace.steps]
