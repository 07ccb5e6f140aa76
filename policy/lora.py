"""LoRA fine-tuning of a pretrained causal LM (peft): adapters on the attention projections, merged after
training so the saved directory is a plain checkpoint that ``from_pretrained`` loads without peft."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PreTrainedModel:
    """Freeze ``model`` and wrap it with trainable low-rank adapters."""
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)  # type: ignore[return-value]


def merge_lora(model: PreTrainedModel) -> PreTrainedModel:
    """Fold the adapters into the base weights (no inference overhead, no peft needed to load)."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
