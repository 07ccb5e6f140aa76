"""A byte-level BPE tokenizer trained on the serialised traces themselves.

Byte-level, so every string (typos, any script, slot brackets) encodes without an unknown token; trained on the
prompts and action texts the model will read, so control ids, slot names and frequent phrases become single
tokens and prompts stay short. Saved as a ``PreTrainedTokenizerFast`` next to the model.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from policy.serialise import ACTION_END, ACTION_START

PAD = "<pad>"
SPECIAL_TOKENS = [PAD, ACTION_START, ACTION_END]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; the special tokens get ids 0, 1, 2 (pad, action start, action end)."""
    tokenizer = Tokenizer(models.BPE())
    # Split at spaces only (each word keeps its leading space), so ids such as ``order_id:text*`` or
    # ``delivery_status`` can become single tokens; byte-level mapping after that, without its own regex split.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="merged_with_next"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=ACTION_START,
        eos_token=ACTION_END,
        model_max_length=4096,
    )
