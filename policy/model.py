"""The policy's causal LM: a small Llama or Qwen2 built from a config, or any pretrained checkpoint directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

Architecture = Literal["llama", "qwen2"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a from-scratch model. The default is sized for CPU: ~0.3M parameters besides the embeddings, a few ms per proposal."""

    architecture: Architecture = "llama"
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    max_positions: int = 2048
    rope_theta: float = 10000.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def build_model(config: ModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> PreTrainedModel:
    """A randomly initialised causal LM of the configured architecture (nothing is downloaded)."""
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_positions,
        rope_theta=config.rope_theta,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    if config.architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def load_model(path: str | Path) -> PreTrainedModel:
    """Any causal LM directory `from_pretrained` can read (ours, or a pretrained checkpoint such as Qwen2.5)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    _own_weights(model)
    return model


def _own_weights(model: torch.nn.Module) -> None:
    """Move the weights into memory of their own. Loaded from safetensors they stay at the file's offsets (8-byte
    aligned, not 64): on this CPU a head product of 4 ms on those weights now and then took up to 170 ms, and never
    more than twice its median on an aligned copy (docs/decisions/0012)."""
    with torch.no_grad():
        for parameter in model.parameters():  # each shared (tied) parameter once
            parameter.data = parameter.data.clone(memory_format=torch.contiguous_format)
        for buffer in model.buffers():
            buffer.data = buffer.data.clone()


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
